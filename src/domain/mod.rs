//! Value types that are parsed once at the edge and cannot hold invalid values.

pub mod clock;
pub mod cycle;
pub mod distributor;
pub mod identity;
pub mod media;
pub mod money;
pub mod overage;
pub mod plan;
pub mod requests;
pub mod sides;
pub mod text;
pub mod tokens;

pub use clock::{Clock, ManualClock, SystemClock};
pub use cycle::Cycle;
pub use distributor::{DistributorId, DistributorName, Pool, Scope, TenantId};
pub use identity::{DisplayName, Email, Identity, UserKey};
pub use money::{Brl, PricePer1k};
pub use overage::{Overage, Payment};
pub use plan::{PlanChange, PlanModels, PlanName, PlanPolicy, PlanSpec};
pub use requests::{Period, RequestCounts, RequestLimit, RequestLimits};
pub use sides::{Room, Side, SideAllowances, SideUse};
pub use tokens::{TokenAmount, Weights, used_percent};
