"""Readers for annotation sources; each turns official release files into plain indexes."""
