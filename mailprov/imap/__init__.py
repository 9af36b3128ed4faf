"""The IMAP server: protocol layer on top of the mailbox store (mailprov.imap.store)."""
