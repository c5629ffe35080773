"""comm-thirdparty: a comm backend that comm's developers did not write.

It serves ``thirdparty://<name>`` addresses between tasks of one process with
asyncio queues, using only comm-core's public API.
"""

from comm_thirdparty._backend import ThirdPartyBackend

__all__ = ["ThirdPartyBackend"]
