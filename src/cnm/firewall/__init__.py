"""cnm.firewall"""
