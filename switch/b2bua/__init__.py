"""The back-to-back user agent: every call is two or more legs, each its own dialog."""
