"""The engine: runs. Receives its storage, registry, clock and settings; opens nothing itself."""
