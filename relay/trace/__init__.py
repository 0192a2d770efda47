"""Message trace: what happened to each message, from the client's Message-ID to SES's verdict."""
