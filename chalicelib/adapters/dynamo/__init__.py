"""DynamoDB adapters: usage counters, task records, the control table and API keys.

Each adapter is given a low-level DynamoDB client; it never builds one.
TTL attributes only clean up: every read compares the expiry with ``now``.
"""

from chalicelib.adapters.dynamo.control import DynamoControlStore
from chalicelib.adapters.dynamo.keys import DynamoKeyStore
from chalicelib.adapters.dynamo.tasks import DynamoTaskStore
from chalicelib.adapters.dynamo.usage import DynamoUsageStore

__all__ = ["DynamoControlStore", "DynamoKeyStore", "DynamoTaskStore", "DynamoUsageStore"]
