"""The sinkhole server program (``trio-smtpd``): durable Maildir delivery, structured logs."""
