"""Pipeline for five blur papers."""
