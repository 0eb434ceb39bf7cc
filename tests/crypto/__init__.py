"""Tests of envelope encryption and the key providers."""
