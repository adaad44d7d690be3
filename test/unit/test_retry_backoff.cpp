#include <doctest/doctest.h>

#include "agent/src/agent.hpp"

using namespace kmesh;
using std::chrono::milliseconds;

TEST_CASE("RetryBackoff doubles from 1 s to 30 s and starts over on reset") {
    RetryBackoff b;
    CHECK(b.next() == milliseconds(1000));
    CHECK(b.next() == milliseconds(2000));
    for (int i = 0; i < 10; i++) b.next();
    CHECK(b.next() == milliseconds(30000));
    b.reset();
    CHECK(b.next() == milliseconds(1000));
}
