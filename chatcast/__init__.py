"""chatcast: a streaming chat server for LLM applications.

The code lives in the repository's top-level packages (`server/`, `store/`, `providers/`,
`core/`, `clients/`); it is installed, imported and type-checked as `chatcast.server`,
`chatcast.store`, … so an application that has its own `server`, `store` or `providers`
module can install and embed chatcast without a name clash.
"""

__version__ = "0.1.0"
