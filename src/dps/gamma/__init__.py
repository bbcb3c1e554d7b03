"""Module Gamma: route records and deliver them to destinations, with retries and a DLQ."""
