pub use self::refined_tcp_stream::RefinedTcpStream;
pub use self::sequential::{SequentialWriterBuilder, Sink};

pub(crate) mod refined_tcp_stream;
mod sequential;
