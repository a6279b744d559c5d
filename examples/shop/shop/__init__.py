"""A small shop that uses Herald: the host application of Herald's original story.

A customer signs in and sees their orders and a live notification panel; an admin marks
an order shipped, and in the same database transaction as that UPDATE the shop INSERTs
the customer's notification into ``herald.notifications``. The customer's browser gets
it at COMMIT from whichever Herald node holds their socket; a rollback pushes nothing.
"""
