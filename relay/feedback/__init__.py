"""SES bounce and complaint feedback: SNS webhook, SQS poller, event parsing, applying to the store."""
