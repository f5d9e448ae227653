"""Which SGLang is installed, and which of its state layouts that implies.

SGLang changed the meaning of its GDN recurrent-state pool in 0.5.10 (PR #20283): the pool tensor
is allocated `[slots, HV, Dv, Dk]` in every version, but up to 0.5.9 its kernels index it as
`[HV, K, V]` (so only Dk == Dv models worked there), and from 0.5.10 as `[HV, V, K]`. The shape
cannot tell the two apart when Dk == Dv (every released checkpoint), so the layout is decided from
the installed version, never assumed.
"""

from __future__ import annotations

import re
from importlib import metadata

# First release with `SGLANG_EXTERNAL_MODEL_PACKAGE` and the Qwen3.5 config classes.
MIN_SGLANG = (0, 5, 9)
# First release whose GDN kernels read the SSM state as [HV, V, K].
VK_LAYOUT_SINCE = (0, 5, 10)


class SGLangVersionError(RuntimeError):
    """SGLang is missing or older than deltaserve's plugin supports."""


def parse_version(text: str) -> tuple[int, int, int]:
    """`"0.5.10.post1"` -> `(0, 5, 10)`; raises `ValueError` naming `text` when it has no x.y.z."""
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    if m is None:
        raise ValueError(f"text: cannot parse a version from {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def installed_version() -> str:
    """The installed sglang distribution's version string."""
    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        raise SGLangVersionError("sglang is not installed in this environment") from None


def ssm_layout_for(version: str) -> str:
    """SSM-state layout SGLang `version` uses: "kv" (`[HV, K, V]`, <= 0.5.9) or "vk" (`[HV, V, K]`)."""
    v = parse_version(version)
    if v < MIN_SGLANG:
        raise SGLangVersionError(
            f"sglang {version} is too old: deltaserve's plugin needs >= {'.'.join(map(str, MIN_SGLANG))}"
        )
    return "vk" if v >= VK_LAYOUT_SINCE else "kv"


def detect_ssm_layout() -> str:
    """SSM-state layout of the installed SGLang."""
    return ssm_layout_for(installed_version())
