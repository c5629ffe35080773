"""Tools for testing comm backends: the conformance kit and an async test runner."""
