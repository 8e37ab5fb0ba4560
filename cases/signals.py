"""What the cases app announces to the apps above it (retrieval), which connect receivers in
their `AppConfig.ready`. `cases` never imports those apps: it only sends these signals.

Both are sent with `Signal.send` (not `send_robust`): a receiver's exception reaches the sender,
so inside a transaction it rolls the whole write back.
"""

from django.dispatch import Signal

# Sent inside the import transaction, once per imported study that has not been processed yet
# (status `uploaded`), with `study=`. Receivers write in the same transaction (the processing
# job commits or rolls back with the study's rows) and defer side effects such as broker
# messages to `transaction.on_commit`.
study_imported = Signal()

# Sent after the commit that approved a proposed reference case or retired an approved one
# (the approved library changed), with `reference_case_id=`.
reference_library_changed = Signal()
