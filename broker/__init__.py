"""Broker side of camstack: Mosquitto config, PKI, accounts, client helpers, operator CLI."""
