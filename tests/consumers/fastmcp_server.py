"""An MCP server built with FastMCP that accepts agent tokens through
agent-tokens' RFC 7662 introspection endpoint (docs/verifiers.md).

Run by tests/api/consumers.rs: python fastmcp_server.py PORT, with
AGENT_TOKENS_INTROSPECTION_URL, AGENT_TOKENS_CLIENT_ID and
AGENT_TOKENS_CLIENT_SECRET in the environment (never on the command line).
"""

import os
import sys

from fastmcp import FastMCP
from fastmcp.server.auth.providers.introspection import IntrospectionTokenVerifier
from fastmcp.server.dependencies import get_access_token

verifier = IntrospectionTokenVerifier(
    introspection_url=os.environ["AGENT_TOKENS_INTROSPECTION_URL"],
    client_id=os.environ["AGENT_TOKENS_CLIENT_ID"],
    client_secret=os.environ["AGENT_TOKENS_CLIENT_SECRET"],
    # Every call asks agent-tokens, so a revocation applies to the next one.
    cache_ttl_seconds=0,
)

mcp = FastMCP("agent-tokens consumer test", auth=verifier)


@mcp.tool
def whoami() -> str:
    """The user whose agent token made this call."""
    token = get_access_token()
    return token.claims["sub"] if token else ""


if __name__ == "__main__":
    mcp.run(transport="http", host="127.0.0.1", port=int(sys.argv[1]), show_banner=False)
