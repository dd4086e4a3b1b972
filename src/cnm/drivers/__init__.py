"""cnm.drivers"""
