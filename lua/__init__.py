"""Lua scripts, one file per atomic stock operation (shipped as package data)."""
