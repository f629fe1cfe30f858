"""Errors shared by the data sources (arjax.data.sources, arjax.data.text)."""


class MissingSplitError(KeyError):
  """The source exists but has no data for the requested split."""

  def __str__(self) -> str:   # KeyError would quote the message.
    return str(self.args[0])
