"""Thin REST routers: parse, call service.recognition, format."""
