"""Run by `nox -s test(package='tokenizer')` in the venv that holds only meditok-tokenizer and its test extra:
fail if an inference install pulled in a heavy framework it must not need."""

import importlib.metadata
import sys

forbidden = sys.argv[1:]
installed = {dist.metadata["Name"].lower().replace("_", "-") for dist in importlib.metadata.distributions()}
found = sorted(name for name in forbidden if name.lower() in installed)
if found:
    sys.exit(f"meditok-tokenizer's install pulled in {found}; inference users must not need them")
if "meditok-tokenizer" not in installed:
    sys.exit("meditok-tokenizer is not installed in this venv")
print(f"standalone install OK: none of {forbidden} installed ({len(installed)} distributions)")
