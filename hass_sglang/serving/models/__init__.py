"""Draft model classes registered with SGLang's model registry by `hass_sglang.serving.plugin`.

SGLang's `ModelRegistry.register(package)` imports every module of this package and collects each
module's `EntryClass`; keep only SGLang model modules here (they import SGLang's layers).
"""
