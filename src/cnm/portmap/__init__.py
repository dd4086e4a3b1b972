"""cnm.portmap"""
