"""Tests of fedcond.continual."""
