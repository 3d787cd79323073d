"""Test harness for this service and for services built from it: fixtures, servers, load."""
