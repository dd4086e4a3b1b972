"""cnm.ipam"""
