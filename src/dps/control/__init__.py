"""The control service: the operations plane around the three stages."""
