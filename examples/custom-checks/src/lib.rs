//! The shop team's checks: its own view (an order with its shipments, from two systems)
//! and a check over it. The binary (`src/main.rs`) registers them with `overseer::main`.

use overseer::{Registry, Verdict};

/// The generated view types (`proto/shop/views.proto`).
pub mod views {
    include!(concat!(env!("OUT_DIR"), "/shop.v1.rs"));
}

/// The views' descriptors, registered with the checks: no config entry needed.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/views.binpb"));

/// A shipped order's shipments add up to its quantity.
pub fn shipped_order_is_fully_shipped(v: &views::OrderWithShipments) -> Verdict {
    let Some(order) = &v.order else {
        return Verdict::fail("the view has no order");
    };
    if order.status != "shipped" {
        return Verdict::Pass;
    }
    let shipped: i64 = v.shipments.iter().map(|s| s.quantity).sum();
    Verdict::check(shipped == order.quantity, || {
        Verdict::fail(format!(
            "order {} is marked shipped with {} items, its shipments hold {shipped}",
            order.id, order.quantity
        ))
    })
}

/// Every check of the shop team.
pub fn register(registry: &mut Registry) {
    registry.views(DESCRIPTORS);
    registry.check(
        "shipped_order_is_fully_shipped",
        shipped_order_is_fully_shipped,
    );
}

#[cfg(test)]
mod tests {
    use super::views::{Order, OrderWithShipments, Shipment};
    use super::*;

    fn view(status: &str, quantity: i64, shipped: &[i64]) -> OrderWithShipments {
        OrderWithShipments {
            order: Some(Order {
                id: "O1".into(),
                customer: "c".into(),
                quantity,
                status: status.into(),
            }),
            shipments: shipped
                .iter()
                .map(|q| Shipment {
                    id: "S".into(),
                    order_id: "O1".into(),
                    quantity: *q,
                })
                .collect(),
        }
    }

    #[test]
    fn verdicts() {
        assert!(shipped_order_is_fully_shipped(&view("shipped", 3, &[1, 2])).is_pass());
        assert!(shipped_order_is_fully_shipped(&view("placed", 3, &[])).is_pass());
        let v = shipped_order_is_fully_shipped(&view("shipped", 5, &[3]));
        assert!(!v.is_pass());
        assert!(format!("{v:?}").contains("shipments hold 3"), "{v:?}");
    }
}
