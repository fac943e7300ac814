/* geovision report: draws the page's inline data with Leaflet. No network access. */
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('geovision-data').textContent);
  var map = L.map('map', {zoomSnap: 0.25, maxZoom: 24, attributionControl: false});
  map.createPane('rasters');
  map.getPane('rasters').style.zIndex = 350;

  function escapeHtml(value) {
    return String(value).replace(/[&<>"']/g, function (c) {
      return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c];
    });
  }

  function popup(name) {
    return function (layer) {
      var props = (layer.feature && layer.feature.properties) || {};
      var rows = Object.keys(props).map(function (key) {
        var value = props[key];
        if (value === null || value === undefined) { value = ''; }
        return '<tr><th>' + escapeHtml(key) + '</th><td>' + escapeHtml(value) + '</td></tr>';
      }).join('');
      return '<div class="gv-popup"><strong>' + escapeHtml(name) + '</strong><table>' + rows + '</table></div>';
    };
  }

  function darken(hex) {
    var n = parseInt(hex.slice(1), 16);
    var parts = [(n >> 16) & 255, (n >> 8) & 255, n & 255].map(function (v) {
      return ('0' + Math.round(v * 0.6).toString(16)).slice(-2);
    });
    return '#' + parts.join('');
  }

  function classColor(spec, props) {
    var name = props ? props.class_name : null;
    if (spec.classed && name !== null && name !== undefined && data.colors[name]) { return data.colors[name]; }
    return spec.color;
  }

  var overlays = {};
  var rasters = {};
  var layers = {};
  data.rasters.forEach(function (r) {
    var layer = L.imageOverlay(r.uri, r.bounds, {
      pane: 'rasters', opacity: 0.85, interactive: false, className: 'gv-' + r.kind, alt: r.name
    });
    rasters[r.name] = layer;
    overlays[escapeHtml(r.name)] = layer;
    if (r.visible) { layer.addTo(map); }
  });
  data.layers.forEach(function (spec) {
    var layer = L.geoJSON(spec.data, {
      style: function (feature) {
        var color = classColor(spec, feature.properties);
        if (spec.classed) {
          return {color: darken(color), weight: 1.5, opacity: 1, fillColor: color, fillOpacity: 0.45};
        }
        return {color: color, weight: 2, opacity: 1, fill: true, fillOpacity: 0};
      },
      pointToLayer: function (feature, latlng) {
        var color = classColor(spec, feature.properties);
        return L.circleMarker(latlng, {radius: 5, color: '#1c2833', weight: 1, fillColor: color, fillOpacity: 0.9});
      }
    });
    layer.bindPopup(popup(spec.name), {maxWidth: 360});
    layers[spec.name] = layer;
    overlays[escapeHtml(spec.name) + ' <span class="gv-count">(' + spec.shown + ')</span>'] = layer;
    layer.addTo(map);
  });

  L.control.layers(null, overlays, {collapsed: false, sortLayers: false}).addTo(map);
  L.control.scale({imperial: false}).addTo(map);
  if (data.bounds) {
    map.fitBounds(data.bounds, {padding: [12, 12]});
  } else {
    map.setView([0, 0], 2);
  }

  window.geovisionReport = {
    map: map,
    layers: layers,
    rasters: rasters,
    featureCount: function (name) { return layers[name] ? layers[name].getLayers().length : null; },
    ready: true
  };
}());
