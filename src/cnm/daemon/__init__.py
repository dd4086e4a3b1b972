"""cnm.daemon"""
