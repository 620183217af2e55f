"""The code sandbox: untrusted Python in fresh namespaces with kernel-enforced limits."""

from xrouter.reward.sandbox.host import (GUARANTEES, Sandbox, SandboxLimits, SandboxResult,
                                         SandboxUnavailable, TestSpec)

__all__ = ["GUARANTEES", "Sandbox", "SandboxLimits", "SandboxResult", "SandboxUnavailable", "TestSpec"]
