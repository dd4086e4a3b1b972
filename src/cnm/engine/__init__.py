"""cnm.engine"""
