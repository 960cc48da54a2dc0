"""Calls the whoami tool of an MCP server as an agent would, with its agent
token as the bearer credential. Prints the result; exits 1 when refused.

python fastmcp_call.py URL, with AGENT_TOKEN in the environment.
"""

import asyncio
import os
import sys

from fastmcp import Client
from fastmcp.client.auth import BearerAuth


async def main(url: str) -> None:
    async with Client(url, auth=BearerAuth(os.environ["AGENT_TOKEN"])) as client:
        result = await client.call_tool("whoami", {})
        print(result.data)


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1]))
    except Exception as e:  # refused (401) or unreachable: say so, exit 1
        print(f"refused: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
