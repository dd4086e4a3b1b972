"""cnm.runtime"""
