"""ses-relay: a local SMTP relay for Amazon SES."""

__version__ = "0.1.0"
