"""cnm.cli"""
