"""cnm.api"""
