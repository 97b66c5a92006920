"""The obfuscated test environment: a masked copy of a warehouse that counts like production.

Modules: ``masking`` (keyed, deterministic value mappings), ``create`` (the streamed,
masked copy and its marker), ``check`` (the proof: counts, frequencies, no production
value, k-anonymity), ``marker`` (is this warehouse a sandbox; read by the audit), ``guard``
(the handoff refusal on a sandbox). See docs/sandbox.md.
"""
