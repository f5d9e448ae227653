"""Package named by `SGLANG_EXTERNAL_MODEL_PACKAGE`: SGLang imports each top-level module here and
registers every class in its `EntryClass` under the class name, which is the HF architecture name.

Keep only model modules at this level (SGLang imports all of them); helpers live one level up.
"""
