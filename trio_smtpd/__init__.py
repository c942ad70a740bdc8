"""trio_smtpd: SMTP and LMTP servers for trio."""
