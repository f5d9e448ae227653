"""deltaserve inside upstream SGLang, as an external model package (no SGLang patch).

    SGLANG_EXTERNAL_MODEL_PACKAGE=deltaserve.plugin.sglang.models python -m sglang.launch_server ...

`models/` holds the modules SGLang's registry scans (each exposes `EntryClass`); `model.py` the
shared class contract; `bridge.py` the batch and state-pool translation; `version.py` the layout
detection; `doctor.py` a check of what SGLang resolves. Nothing here imports sglang at package
import time, and nothing here imports `deltaserve.engine` (SGLang brings its own scheduler/cache).
"""
