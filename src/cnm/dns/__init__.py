"""cnm.dns"""
