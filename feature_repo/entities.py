from feast import Entity, ValueType

# A cardholder: the person whose card makes the transaction.
customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.INT64,
    description="Cardholder account.",
)

# A merchant accepting the card.
merchant = Entity(
    name="merchant",
    join_keys=["merchant_id"],
    value_type=ValueType.INT64,
    description="Card-accepting merchant.",
)
