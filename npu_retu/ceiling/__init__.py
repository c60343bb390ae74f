"""ceiling"""
