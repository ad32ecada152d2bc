"""Pools, images and volumes."""
