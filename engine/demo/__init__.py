"""The embedded default world: synthetic faces and the tiny model. Production code does not import it."""
