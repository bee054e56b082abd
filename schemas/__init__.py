"""The JSON Schemas of the messages this project reads and writes (installed as `moderation.message_schemas`)."""
