"""Durable queues between the modules: one interface, an embedded and a scale-out backend."""

from dps.queues.base import DeadLetterSink, Lease, Message, Queue, QueueSpec, open_queue

__all__ = ["DeadLetterSink", "Lease", "Message", "Queue", "QueueSpec", "open_queue"]
